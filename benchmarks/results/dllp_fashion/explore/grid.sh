cd /work/main
for c in '{"noise": 1e-3, "noise_scale": "absolute", "per_particle_batches": false}' \
         '{"noise": 0.1, "per_particle_batches": false}' \
         '{"noise": 1e-3, "noise_scale": "absolute", "per_particle_batches": true}' \
         '{"noise": 0.1, "per_particle_batches": true}' \
         '{"noise": 0.3, "per_particle_batches": true}' \
         '{"noise": 0.1, "per_particle_batches": true, "bandwidth_scale": 0.1}' \
         '{"noise": 0.1, "per_particle_batches": true, "bandwidth_scale": 10.0}' \
         '{"noise": 0.1, "per_particle_batches": true, "temperature": 10.0}' \
         '{"noise": 0.1, "per_particle_batches": true, "epochs": 3}' \
         '{"noise": 0.1, "per_particle_batches": false, "epochs": 3}' ; do
  OMP_NUM_THREADS=1 .venv/bin/python /tmp/dx/explore.py "$c" 2>&1 | tail -1
done
