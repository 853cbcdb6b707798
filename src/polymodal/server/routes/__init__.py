"""The API's routes, one router per area: search (queries and embeddings), items (the indexed files),
health, and clip-retrieval's back end."""
