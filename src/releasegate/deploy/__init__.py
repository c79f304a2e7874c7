"""Images and containers of blue/green deploys on one Docker host.

- :mod:`releasegate.deploy.build`: ``build()`` the service image, offline or from a registry;
- :mod:`releasegate.deploy.wheels`: host-built wheels for offline builds;
- :mod:`releasegate.deploy.containers`: ``deploy()``, ``status()``, ``stop()`` per color;
- :mod:`releasegate.deploy.engine`: the Docker engine connection and the labels used.
"""
