"""The KV's contract, shared by its replicas and its client: where a key lives and how big it
may be (:mod:`mt_kv_contract.keys`), and what a refusal or an unknown outcome means
(:mod:`mt_kv_contract.errors`)."""
