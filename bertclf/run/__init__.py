"""The run stage: configure, build, train, evaluate and export one classifier, write it to disk."""
