"""The EndoFed ServerApp (coordinating center)."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from endofed.server.loop import FederatedRun
from endofed.shared.config import EndoFedConfig

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the federated study described by the run config."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Opacus configures the root logger (level WARNING) on import, which makes the call
    # above a no-op: without this the round lines never reach `flwr run --stream`.
    logging.getLogger("endofed").setLevel(logging.INFO)
    cfg = EndoFedConfig.from_flower(context.run_config)
    run_dir = FederatedRun(
        cfg, grid, run_config=dict(context.run_config), context=context
    ).run()
    log.info("EndoFed run finished: %s", run_dir)
