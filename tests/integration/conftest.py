from tests.harness import client_role, corral_env, worker_factory

__all__ = ["client_role", "corral_env", "worker_factory"]
