"""The KServe model server of the `recommender` model (see README.md)."""
