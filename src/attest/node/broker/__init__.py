"""``attestd-tpm``, the privileged broker: it owns the TPM, the runtime measurement log and the
audit log, and answers a narrow, typed set of requests -- the table ``protocol.OPS``, framed and
encoded by ``wire`` -- over Unix sockets (``server``). ``client.BrokerClient`` and
``local.LocalNode`` implement ``attest.node.port.NodePort`` over the socket and in-process."""
