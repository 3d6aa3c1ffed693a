"""TLS: checking certificate files, SSL contexts that follow the files as they are rotated, and the
local certificate authority of `pgwarden local up --tls`."""
