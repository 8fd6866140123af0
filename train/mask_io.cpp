#include "train/mask_io.h"

#include <filesystem>

#include "core/error.h"
#include "train/checkpoint.h"

namespace ncsrec {
namespace fs = std::filesystem;

namespace {
std::string dataset(const MultiTaskModel& model, int task, int layer) {
  return "mask/" + model.config().tasks[static_cast<size_t>(task)].name + "/" + model.masked_layer_name(layer);
}
}  // namespace

void write_masks(h5::File& file, const MultiTaskModel& model) {
  for (int t = 0; t < static_cast<int>(model.config().tasks.size()); ++t)
    for (int l = 0; l < model.num_masked_layers(); ++l) {
      const BitMask& m = model.mask(t, l);
      const std::string name = dataset(model, t, l);
      file.write(name, m.bits.data(), {static_cast<uint64_t>(m.bits.size())});
      file.set_attr(name, "rows", m.rows);
      file.set_attr(name, "cols", m.cols);
      file.set_attr(name, "ones", m.count());
      file.set_attr(name, "bitorder", std::string("little"));
    }
}

void write_mask_file(const std::string& path, const MultiTaskModel& model) {
  const std::string tmp = path + ".tmp";
  {
    h5::File f = h5::File::create(tmp);
    write_masks(f, model);
    f.close();
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw UserError("mask file: cannot rename " + tmp + " to " + path + ": " + ec.message());
}

void read_masks(const h5::File& file, MultiTaskModel& model) {
  for (int t = 0; t < static_cast<int>(model.config().tasks.size()); ++t)
    for (int l = 0; l < model.num_masked_layers(); ++l) {
      const std::string name = dataset(model, t, l);
      if (!file.exists(name))
        throw UserError("mask file " + file.path() + " has no " + name + " (a mask for another model or task?)");
      BitMask m;
      m.rows = file.attr_int(name, "rows");
      m.cols = file.attr_int(name, "cols");
      if (file.has_attr(name, "bitorder") && file.attr_string(name, "bitorder") != "little")
        throw UserError("mask file " + file.path() + ": " + name + " is not in little bit order");
      m.bits = file.read_u8(name);
      const BitMask& current = model.mask(t, l);
      if (!m.same_shape(current.rows, current.cols) || m.bits.size() != static_cast<size_t>((m.size() + 7) / 8))
        throw UserError("mask file " + file.path() + ": " + name + " is [" + std::to_string(m.rows) + ", " +
                        std::to_string(m.cols) + "] but the model's layer is [" + std::to_string(current.rows) +
                        ", " + std::to_string(current.cols) + "]");
      model.set_mask(t, l, m);
    }
}

void load_masks(const std::string& path, MultiTaskModel& model) {
  std::string file = path;
  if (fs::is_directory(path) || fs::exists(path + ".tmp") || fs::exists(path + ".old")) {
    read_checkpoint_meta(path);  // recovers and verifies the checkpoint
    file = path + "/rank-0.h5";
  }
  read_masks(h5::File::open_read(file), model);
}

}  // namespace ncsrec
