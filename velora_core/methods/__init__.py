"""The training methods: each base and memory technique registered once with its apply step
(``registry``), and the optimizer each method trains with (``optimizers``)."""
