"""Operations tools: benchmarks, soak, quantisation, evaluation, perf inputs, test media."""
