"""Unbroken's HTTP layer and command line (import name ``unbroken_server``).

The HTTP server (``unbroken serve``) arrives with the server issue; this
package already holds the ``unbroken`` command, whose ``bench`` subcommand
measures the engine.
"""
