"""Importing this module starts TensorFlow quietly (`bertclf.quiet.load_tensorflow`): for
processes that can only be told what to import first, as a trial process's preload."""

from bertclf.quiet import load_tensorflow

tf = load_tensorflow()
