"""Server side of the fedtrust Flower app: the strategy and the ServerApp."""

from strategies.compressed_fedavg import CompressedFedAvg, RoundOutcome

__all__ = ["CompressedFedAvg", "RoundOutcome"]
