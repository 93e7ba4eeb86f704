r"""Command line of the teacher-hacking experiment (the experiment itself: `experiment.run`).

  python -m th_distill.main --config=configs/tiny.py --workdir=/tmp/th [--config.KEY=VALUE ...]

Exit status: 0 done, 1 the run cannot go on as asked, 2 a usage error, 75 pre-empted (run the
same command again to resume); errors are one line on stderr (`--traceback` for the traceback).
"""

from __future__ import annotations

from absl import flags

from th_distill import cli


def main() -> None:
  """The command line (flags are defined here, not at import: other modules define --config too)."""
  config = cli.config_flag("Experiment config file (configs/*.py).")
  workdir = flags.DEFINE_string("workdir", None, "Directory for every output of the run.")
  flags.mark_flags_as_required(["config", "workdir"])

  def body(argv: list[str]) -> None:
    cli.reject_arguments(argv)
    # Imported once the flags and the config file are checked, so that a usage error or --help
    # does not wait for the pipeline's modules (about a second: scipy, matplotlib, the stages).
    from th_distill import experiment

    cli.run_command(lambda: experiment.run(config.value, workdir.value))

  cli.main(body)


if __name__ == "__main__":
  main()
