"""DAVIS / YouTube-VOS evaluation: metrics, scoring, dataset registry, reports and benchmark runs."""
