"""The refinement itself: inputs and their limits, prompts, programs, results, answers, the
alignment of a draft with a program, arithmetic checks and the verdict's triage order."""
