"""Learning paradigms on top of the aligned models: few-shot adaptation on frozen embeddings
(`fewshot`) and federated training over clients with different data (`federated`, with the
ShapesWorld experiment in `federated_shapes`)."""
