"""The benchmarks behind ``ublox-sim bench``, shipped with the package so an installed
wheel runs them too. What each measures and its goal: benchmarks/README.md in the source
tree. Importing this package imports none of them (each pulls in what it measures)."""
