module github.com/mtwatch/mtwatch

go 1.24
