"""Entry point of the persist-purchase image: `python consumer.py` runs the Kafka consumer
(the runtime's loop, purchase_common.batch_consumer, over persist.PersistPurchase), the
process KEDA scales from zero.

Health, readiness and metrics are served on HOST:HEALTH_PORT. SIGTERM finishes the batch in
hand, commits and leaves the group; giving up on Kafka or MongoDB exits 1, nothing committed.
"""

import sys

from persist import PersistPurchase
from purchase_common import batch_consumer, config


def main() -> int:
    function = PersistPurchase(config.settings())
    return batch_consumer.run(function, function.settings, function.logger)


if __name__ == "__main__":
    sys.exit(main())
