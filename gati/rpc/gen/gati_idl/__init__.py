__all__ = ['ttypes', 'constants', 'Service', 'Aggregator', 'Executor', 'Predictor', 'NeighborIndex', 'Retrainer']
