"""Names of the records and message actions the client and the server exchange.

Kept in the core (no Flower import) so that the ClientApp and the strategy agree
on one definition. What the arrays inside ``payload``, ``broadcast`` and
``server-arrays`` are is the codec's business (:mod:`fedtrust.compression.codecs`).

Train message (server -> client), message type ``train`` (exchange 0):
    ``arrays``     global model state dict (parameters and buffers)
    ``config``     ``server-round`` and the strategy's train config (clients read the
                   run config from their Context)
    ``broadcast``  what the codec sends every client with the round, when anything
                   (PowerSGD all-reduce, from round 2: the averaged Q of the last round)
Reply (client -> server):
    ``payload``  exchange 0's compressed update (``Payload.arrays``)
    ``buffers``  BatchNorm running statistics, dense
    ``audit``    ``batch-indices`` of a FedSGD batch, for scoring attacks only
    ``metrics``  ``num-examples``, ``train-loss``, ``uplink-bytes``, ``dense-bytes``,
                 ``buffer-bytes``, ``partition-id``, ``num-partitions`` (the server checks the
                 ids and losses and measures the bytes itself)
Later exchanges of a codec with more than one (PowerSGD all-reduce: exchange 1),
message type ``train.exchange``:
    ``config``         ``server-round``, ``exchange``
    ``server-arrays``  the server's answer (PowerSGD: the orthogonalised mean P, P-hat)
    reply ``payload``  the client's arrays of that exchange (PowerSGD: Q_i = M_i^T P-hat)
"""

ARRAYS = "arrays"
CONFIG = "config"
BROADCAST = "broadcast"
PAYLOAD = "payload"
BUFFERS = "buffers"
AUDIT = "audit"
METRICS = "metrics"
SERVER_ARRAYS = "server-arrays"
COMPRESSOR_STATE = "compressor-state"

EXCHANGE_ACTION = "exchange"
