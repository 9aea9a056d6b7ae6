"""The `kiln` command line: the one package that stands on all three below it.

`kiln_api` (models, CRD, validator) depends on nothing of Kiln's; `kiln_operator` and
`kiln_trainer` depend on `kiln_api` and never on each other; this package dispatches each
sub-command to one of them, importing it only when that sub-command runs.
"""
