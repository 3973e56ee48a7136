"""What a node provider installs besides the Python package (data, no code): the systemd units
of ``attestd`` and ``attestd-tpm``, sysusers.d and tmpfiles.d files and the annotated example
``/etc/attest/attestd.toml``. ``attest node install`` (``attest.node.install``) copies them to
their places; docs/install.md walks through it and docs/daemon-hardening.md explains them."""
