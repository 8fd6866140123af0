// placeholder until sources land
