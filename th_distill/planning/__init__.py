"""Planning a run before it runs: FLOPs, each phase's work, memory per device, the programs
compiled ahead of time for a mesh (`python -m th_distill.planning.plan`, `.memory`), and the plan a
run logs first."""
