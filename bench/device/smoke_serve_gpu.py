"""A local Ray with Serve (HAProxy ingress, throughput-optimised) and one replica holding
`num_gpus: 0.25`: does it start, and which GPU does the replica see. Prints SMOKE OK."""
import os, time
os.environ.update({"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"})
import ray
from ray import serve
t = time.time()
ray.init(address="local", include_dashboard=False, log_to_driver=False)
print("ray", ray.__version__, "init", round(time.time() - t, 1), "s", ray.cluster_resources(), flush=True)
serve.start(http_options={"host": "127.0.0.1", "port": 8125})

@serve.deployment(ray_actor_options={"num_cpus": 0, "num_gpus": 0.25})
class Echo:
    def __call__(self, x):
        return {"x": x, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "LD": bool(os.environ.get("LD_LIBRARY_PATH")), "gpu_ids": ray.get_gpu_ids()}

h = serve.run(Echo.bind(), name="smoke", route_prefix=None)
print("replica:", h.remote(1).result(), flush=True)
serve.shutdown()
ray.shutdown()
print("SMOKE OK", round(time.time() - t, 1), "s")
