"""Identity and trust: certificates, the mesh's shared CA and end-user identity.

`certs` makes and checks certificates and keys, `meshca` the shared root CA and each
cluster's plug-in CA, `meshidentity` a cluster's place in a mesh (mesh ID, cluster name,
network), `dexfile` the identity file that configures Dex for end users.
"""
