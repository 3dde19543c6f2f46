"""The ground layer: errors, typed options, devices, durable files, validated inputs, worker processes and host memory. Imports nothing else of s2vt."""
