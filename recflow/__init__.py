"""recflow: a Kubernetes-native recommender platform on Kubeflow."""

__version__ = "0.1.0"
