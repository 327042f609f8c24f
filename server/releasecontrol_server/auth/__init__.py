"""Who is calling and what they may do: the one place for authentication and authorization.

interceptor.py   authenticates every ReleaseControl RPC by the configured mode
├── tokens.py    rpc-token: `authorization: Bearer` tokens kept as hashes
├── cluster.py   trusted-cluster: the SPIFFE ID of a cluster-CA client certificate
└── dfs.py       dfs: short-lived Ed25519 JWS from a configured issuer
principal.py     the caller: a name, roles and the features they cover
authorize.py     the one decision, `authorize(principal, action, feature)`, used by
                 every RPC (through `require`) and the admin UI
"""
