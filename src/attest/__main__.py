from attest.cli import run

run()
