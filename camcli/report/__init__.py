"""The static HTML report of an output directory.

:mod:`~camcli.report.build` writes it; its pages, script and style sheet are in ``assets/``.
The constants below import nothing heavy: the command line shows them in its help.
"""

REPORT_DIR = "report"  # OUTPUT/report/index.html
THUMB_SIZE = 160  # thumbnail side in pixels
