"""Server side of fedtrust: the CompressedFedAvg strategy (small parts, one job each) and the ServerApp."""

from strategies.compressed_fedavg import CompressedFedAvg

__all__ = ["CompressedFedAvg"]
