"""The EndoFed web dashboard: runs, live rounds, sites, events, report, case viewer, site page.

``endofed dashboard RUNS_DIR`` serves :func:`create_app`. It reads run directories
(:mod:`.reader`, never writes), draws charts as SVG (:mod:`.charts`), runs the case
viewer in memory (:mod:`.cases`) and shows a site's state dir (:mod:`.site`); templates
and the hand-written CSS/JS live in ``templates/`` and ``static/`` (offline: no CDN).
"""

from endofed.server.dashboard.app import create_app

__all__ = ["create_app"]
