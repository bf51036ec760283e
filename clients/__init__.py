"""The Flower ClientApp of fedtrust (``clients.client_app:app``)."""
