// CRC32C (Castagnoli), the checksum of checkpoint manifests. Table-driven software version;
// checkpoints are written once per many steps, so speed is not a concern here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ncsrec {

uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
// CRC32C of a whole file; throws UserError if it cannot be read.
uint32_t crc32c_file(const std::string& path, uint64_t* size = nullptr);

}  // namespace ncsrec
