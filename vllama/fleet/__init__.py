"""Upstream groups: several upstreams (remote OpenAI servers, and perhaps the local engine)
serving one model, health-checked and chosen per request; remote endpoints whose models are
discovered. The state lives in each gateway process (every worker probes on its own).

Pure parts (table-tested): `ring` (consistent hashing with bounded load), `ejection`
(passive ejection and its backoff), `affinity` (a request's conversation-prefix key),
`discovery` (reading /v1/models). Runtime: `members` (endpoints, members, groups) and `fleet`
(the probes and discovery loops of one gateway process).
"""
