# Sourced by the test scripts that launch ranks: one thread per rank, and Open MPI's TCP traffic
# over loopback (a container's other interfaces may not connect); a user's own choice is kept.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_btl_tcp_if_include="${OMPI_MCA_btl_tcp_if_include:-lo}"
export OMPI_MCA_oob_tcp_if_include="${OMPI_MCA_oob_tcp_if_include:-lo}"
