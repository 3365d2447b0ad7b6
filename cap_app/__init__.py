"""CaP Refinery: refine chain-of-thought math answers by re-solving them with programs.

Data flows one way: input -> prompt -> generation -> program -> sandbox -> answer ->
verdict/alignment -> view. Each stage is its own module; the UI and the CLI call the same
functions.
"""
