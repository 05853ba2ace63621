"""The EndoFed site runner: the hospital's process that serves its SuperNode's tasks.

``flower-supernode --isolation process`` stores each message from the SuperLink as a
task on its Runtime (ClientAppIo) API and waits for some process to claim it. In place
of Flower's ``flower-superexec`` / ``flwr-clientapp`` (which install the coordinator's
app bundle and import its code), the site runner

1. claims the task and pulls its message, context, run and FAB (:mod:`.connection`);
2. checks the FAB's content hash against the site's approvals *before* anything from
   the FAB is installed or imported (:mod:`.gate`); a refused app gets an explicit
   error reply the server logs as "site refused the app";
3. runs the hospital's own installed EndoFed ClientApp (``endofed.client.app.app``)
   with the site-owned settings applied (:mod:`endofed.client.site_settings`), warm
   across the messages of a run (:mod:`.run_cache`);
4. writes one entry per message to the site's audit trail (:mod:`.audit`).

One long-lived process per SuperNode (:mod:`.runner`); ``python -m
endofed.client.runner`` starts it (``endofed site join`` does so beside the SuperNode).
"""
