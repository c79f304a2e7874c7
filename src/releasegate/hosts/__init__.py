"""The Docker host releasegate deploys to, and how it is reached.

- :mod:`releasegate.hosts.transport`: ``transport()`` picks this machine or an ssh host
  from ``DOCKER_HOST``; every Docker client and every URL of a color comes from it;
- :mod:`releasegate.hosts.ssh`: the OpenSSH tunnel (control master, forwards) and the
  classification of ssh's failures.
"""
