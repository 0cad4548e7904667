from tests.harness import corral_env, worker_factory

__all__ = ["corral_env", "worker_factory"]
