"""AWS Bedrock: the Converse and ConverseStream APIs, signed with SigV4.

`translate` is the pure wire translation (OpenAI Chat Completions <-> Converse),
`eventstream` decodes ConverseStream's binary AWS event-stream framing, and
`adapter` resolves credentials (standard chain, optional assume-role), signs and
builds the HTTP request.
"""
