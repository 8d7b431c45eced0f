"""``python -m gradserve`` is the ``gradserve`` command."""

from gradserve.cli import main

raise SystemExit(main())
