"""Controlled experiments (paper Section 5, Appendices C and E): the embedded dataset (embedded_data), mixed
clean/corrupted datasets (mixed_dataset), the experiment table (configs), the runner (controlled) and the
`corrupt` / `eval` subcommands (cli)."""
