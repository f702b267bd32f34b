"""`python -m shoal.services.cli`: what the supervisor and the tests run."""

from .main import main

main(prog_name="shoal")  # what the user would type, in usage and error lines
