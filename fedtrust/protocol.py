"""Names of the records and message actions the client and the server exchange.

Kept in the core (no Flower import) so that the ClientApp and the strategy agree
on one definition.

Train message (server -> client), message type ``train``:
    ``arrays``   global model state dict (parameters and buffers)
    ``config``   ``server-round`` (clients read the run config from their Context)
    ``warm-start`` (PowerSGD allreduce, from round 2) the averaged Q of the last round
Reply (client -> server):
    ``payload``  the compressed update (``Payload.arrays``), or P_i for PowerSGD allreduce
    ``buffers``  BatchNorm running statistics, dense
    ``audit``    ``batch-indices`` of a FedSGD batch, for scoring attacks only
    ``metrics``  ``num-examples``, ``train-loss``, ``uplink-bytes``, ``dense-bytes``,
                 ``buffer-bytes``, ``partition-id``, ``num-partitions`` (the server checks the
                 ids and losses and measures the bytes itself)
Second exchange, PowerSGD allreduce only, message type ``train.powersgd_q``:
    ``p-hat``    the orthogonalised mean P (server -> client)
    ``payload``  Q_i = M_i^T P-hat (client -> server), with ``metrics``
"""

ARRAYS = "arrays"
CONFIG = "config"
WARM_START = "warm-start"
PAYLOAD = "payload"
BUFFERS = "buffers"
AUDIT = "audit"
METRICS = "metrics"
P_HAT = "p-hat"
COMPRESSOR_STATE = "compressor-state"

POWERSGD_Q_ACTION = "powersgd_q"
