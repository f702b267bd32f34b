"""`python -m shoal.services.cli`: what the supervisor and the tests run."""

from .main import main

main()
