"""A zoo of small CNNs trained on scikit-learn's digits (being written)."""


def generate_cnn_zoo(out, *, runs=250, checkpoints=4, epochs=20, seed=0, shard_size=50, progress=True, max_shards=None):
    raise NotImplementedError("generate_cnn_zoo is being written")
