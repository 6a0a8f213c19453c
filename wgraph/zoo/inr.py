"""A zoo of SIREN INRs fitted to scikit-learn's digits (being written)."""


def generate_inr_zoo(out, *, images=None, steps=500, seed=0, shard_size=256, progress=True, max_shards=None):
    raise NotImplementedError("generate_inr_zoo is being written")
