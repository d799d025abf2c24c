"""Synthetic N-way image tasks (random pixels, balanced labels): the shape of Omniglot 5-way tasks
without the data, for throughput benchmarks and smoke tests of conv learners. Nothing to learn."""
from __future__ import annotations

from dataclasses import dataclass

from tasks.sampling import Streams, class_labels


@dataclass(frozen=True)
class SyntheticImages:
    ways: int = 5
    image_size: int = 28
    channels: int = 1
    loss: str = "cross_entropy"

    def sample(self, streams: Streams, shots: int, query: int, split: str = "train") -> dict:
        shape = (self.channels, self.image_size, self.image_size)
        # query = examples per class, as in N-way K-shot classification.
        return {"x_support": streams.random((self.ways * shots, *shape)),
                "y_support": class_labels(streams, self.ways, shots),
                "x_query": streams.random((self.ways * query, *shape)),
                "y_query": class_labels(streams, self.ways, query)}
